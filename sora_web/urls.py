from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from annotations import views
from annotations.metrics_views import metrics_page

from . import prometheus_views
from .apis import AuthTokenApi
from .forms import AdminSignInForm, SignInForm

admin.site.login_form = AdminSignInForm

api_v1 = [
    path("auth/token/", AuthTokenApi.as_view(), name="auth-token"),
    path("", include("annotations.urls")),
    path("", include("models_app.urls")),
    path("", include("webhooks.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(authentication_form=SignInForm), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("review/<slug:domain>/", views.review_queue, name="review-queue"),
    path("items/<id:item_id>/", views.item_review, name="item-review"),
    path("metrics/", metrics_page, name="metrics"),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    # The split view serves its start-up script as a file, so the page runs under the CSP (no inline script).
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema", permission_classes=[]), name="api-docs"),
    path("prometheus/metrics", prometheus_views.prometheus_metrics, name="prometheus-metrics"),
]

handler400 = "sora_web.api_errors.json_handler400"
handler403 = "sora_web.api_errors.json_handler403"
handler404 = "sora_web.api_errors.json_handler404"
handler500 = "sora_web.api_errors.json_handler500"
