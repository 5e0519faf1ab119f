"""The example's routes."""

from django.urls import path

from counter_site import views

urlpatterns = [
    path("", views.counter, name="counter"),
    path("login", views.log_in, name="login"),
    path("logout", views.log_out, name="logout"),
    path("sessions", views.my_sessions, name="sessions"),
    path("sessions/others", views.log_out_others, name="log-out-others"),
]
