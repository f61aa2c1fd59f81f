from django.urls import include, path
from shop import views

urlpatterns = [
    path("internal/tasks/", include("tq.contrib.django.urls")),  # pushes, sweeps, cron
    path("orders", views.orders),
    path("orders/<int:order_id>", views.order),
]
