from django.urls import path

from funnels import views

app_name = "funnels"
urlpatterns = [
    path("<int:pk>/preview/", views.preview, name="preview"),
]
