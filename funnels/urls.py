app_name = "funnels"
urlpatterns: list = []
