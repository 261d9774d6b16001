"""/api/v1/: the JSON API (trafficinator.api)."""

from django.urls import path, re_path

from trafficinator import api

app_name = "api"
urlpatterns = [
    path("presets/", api.presets, name="presets"),
    path("targets/", api.targets, name="targets"),
    path("runs/", api.runs, name="runs"),
    path("runs/<int:pk>/", api.run, name="run"),
    path("runs/<int:pk>/stop/", api.run_stop, name="run_stop"),
    path("runs/<int:pk>/report/", api.run_report, name="run_report"),
    path("backfills/", api.plans, name="plans"),
    path("backfills/<int:pk>/", api.plan, name="plan"),
    path("backfills/<int:pk>/confirm/", api.plan_confirm, name="plan_confirm"),
    path("backfills/<int:pk>/cancel/", api.plan_cancel, name="plan_cancel"),
    re_path(r"^(?P<path>.*)$", api.not_found),
]
