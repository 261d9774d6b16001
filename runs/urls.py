from django.urls import path, re_path

from runs import views

app_name = "runs"
urlpatterns = [
    path("", views.dashboard_runs, name="dashboard"),
    path("new/", views.start, name="start"),
    path("new/estimate/", views.estimate, name="estimate"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/summary/", views.summary, name="summary"),
    path("<int:pk>/log/", views.log, name="log"),
    path("<int:pk>/stop/", views.stop, name="stop"),
    path("<int:pk>/verify/", views.verify, name="verify"),
    path("<int:pk>/matomo/", views.matomo, name="matomo"),
    path("<int:pk>/resume/", views.resume, name="resume"),
    path("<int:pk>/close/", views.close, name="close"),
    re_path(r"^(?P<pk>[0-9]+)/report\.(?P<fmt>json|csv|html)$", views.report, name="report"),
    path("compare/", views.compare, name="compare"),
]
