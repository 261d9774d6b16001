from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path

from trafficinator import auth, metrics, views

admin.site.site_header = "Trafficinator"
admin.site.site_title = "Trafficinator"
admin.site.index_title = "Configuration"
# The navigation's "Dashboard" is the way to the site: no separate "View site" link.
admin.site.site_url = None

urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("health/web/", views.health_web, name="health_web"),
    path("metrics", metrics.metrics, name="metrics"),
    path("login/", login_not_required(auth.login), name="login"),
    path("logout/", auth.logout, name="logout"),
    # Browsers ask for /favicon.ico where a page names no icon (a JSON answer, an error page).
    path("favicon.ico", views.favicon),
    path("runs/", include("runs.urls")),
    path("funnels/", include("funnels.urls")),
    path("backfill/", include("backfill.urls")),
    path("api/v1/", include("trafficinator.api_urls")),
    path("admin/", admin.site.urls),
]
