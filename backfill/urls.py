from django.urls import path, re_path

from backfill import views

app_name = "backfill"
urlpatterns = [
    path("", views.plan_list, name="list"),
    path("new/", views.plan_new, name="new"),
    path("<int:pk>/", views.plan_detail, name="detail"),
    path("<int:pk>/edit/", views.plan_edit, name="edit"),
    path("<int:pk>/confirm/", views.plan_confirm, name="confirm"),
    path("<int:pk>/cancel/", views.plan_cancel, name="cancel"),
    path("<int:pk>/resume/", views.plan_resume, name="resume"),
    path("<int:pk>/clone/", views.plan_clone, name="clone"),
    path("<int:pk>/progress/", views.plan_progress, name="progress"),
    path("<int:pk>/verify/", views.plan_verify, name="verify"),
    re_path(r"^(?P<pk>[0-9]+)/report\.(?P<fmt>json|csv)$", views.plan_report, name="report"),
]
