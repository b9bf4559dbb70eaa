from django.urls import path

from monitoring import apis, prometheus

urlpatterns = [
    path("health/live", apis.liveness, name="health-live"),
    path(
        "api/health/course-generation",
        apis.CourseGenerationHealthApi.as_view(),
        name="health-course-generation",
    ),
    path("metrics", prometheus.metrics_view, name="metrics"),
]
