from django.urls import path

from generation import views

urlpatterns = [
    path("courses/<uuid:job_id>/", views.course_page, name="course-page"),
]
