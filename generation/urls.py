from django.urls import path

from generation import apis, quality_apis

urlpatterns = [
    path("jobs/", apis.JobCollectionApi.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>/", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/progress/", apis.JobProgressApi.as_view(), name="job-progress"),
    path("jobs/<uuid:job_id>/events/", apis.JobEventsApi.as_view(), name="job-events"),
    path("jobs/<uuid:job_id>/course/", apis.JobCourseApi.as_view(), name="job-course"),
    path(
        "jobs/<uuid:job_id>/export/<str:export_format>/",
        apis.JobExportApi.as_view(),
        name="job-export",
    ),
    path(
        "jobs/<uuid:job_id>/evaluations/", apis.JobEvaluationsApi.as_view(), name="job-evaluations"
    ),
    path(
        "jobs/<uuid:job_id>/feedback/", quality_apis.JobFeedbackApi.as_view(), name="job-feedback"
    ),
    path("jobs/<uuid:job_id>/cancel/", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("experiments/", quality_apis.ExperimentCollectionApi.as_view(), name="experiments"),
    path(
        "experiments/<int:experiment_id>/",
        quality_apis.ExperimentDetailApi.as_view(),
        name="experiment-detail",
    ),
    path("jobs/<uuid:job_id>/resume/", apis.JobResumeApi.as_view(), name="job-resume"),
    path(
        "jobs/<uuid:job_id>/tasks/<int:task_id>/retry/",
        apis.TaskRetryApi.as_view(),
        name="job-task-retry",
    ),
    path(
        "jobs/<uuid:job_id>/tasks/<int:task_id>/regenerate/",
        apis.TaskRegenerateApi.as_view(),
        name="task-regenerate",
    ),
]
