"""The project's URLs plus the backfill pages, for tests until trafficinator/urls.py
includes them (``path("backfill/", include("backfill.urls"))``)."""

from django.urls import include, path

from trafficinator.urls import urlpatterns as project_urlpatterns

included = any(getattr(pattern, "namespace", None) == "backfill" for pattern in project_urlpatterns)
urlpatterns = list(project_urlpatterns) + ([] if included else [path("backfill/", include("backfill.urls"))])
