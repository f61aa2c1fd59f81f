"""`path("internal/tasks/", include("tq.contrib.django.urls"))`: tq's endpoints (see views)."""

from __future__ import annotations

from django.urls import re_path

from tq.contrib.django import views

app_name = "tq"
urlpatterns = [re_path(r"^(?P<rest>.*)$", views.endpoint, name="endpoint")]
