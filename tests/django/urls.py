from django.urls import include, path

from tests.django.shop import views

urlpatterns = [
    path("internal/tasks/", include("tq.contrib.django.urls")),
    path("orders", views.place_order),
]
