from django.urls import re_path

from ratelimits import apis

urlpatterns = [
    # The specification's exact path, with or without a trailing slash.
    re_path(r"^user/rate-limits/?$", apis.UserRateLimitsApi.as_view(), name="user-rate-limits"),
]
