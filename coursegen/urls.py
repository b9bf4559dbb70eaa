from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.throttling import login_throttled

# Under /api/, a JSON 404 like every other API error (e.g. a job id that is not a UUID).
handler404 = "coursegen.drf.not_found"

urlpatterns = [
    # Before admin.site.urls, so sign-in attempts pass the throttle (COURSEGEN_LOGIN_RATE).
    path("admin/login/", login_throttled(admin.site.login), name="admin-login"),
    path("admin/", admin.site.urls),
    path("api/", include("generation.urls")),
    path("api/", include("ratelimits.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("generation.page_urls")),
    path("accounts/login/", login_throttled(auth_views.LoginView.as_view()), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("monitoring.urls")),
]
