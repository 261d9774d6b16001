from django.contrib import admin
from django.urls import include, path

from trafficinator import metrics, views

admin.site.site_header = "Trafficinator"
admin.site.site_title = "Trafficinator"
admin.site.index_title = "Configuration"

urlpatterns = [
    path("", views.home, name="home"),
    path("health/", views.health, name="health"),
    path("health/web/", views.health_web, name="health_web"),
    path("metrics", metrics.metrics, name="metrics"),
    path("runs/", include("runs.urls")),
    path("funnels/", include("funnels.urls")),
    path("backfill/", include("backfill.urls")),
    path("api/v1/", include("trafficinator.api_urls")),
    path("admin/", admin.site.urls),
]
