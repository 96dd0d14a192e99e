from django.urls import path

from fieldlink.support import views

app_name = "support"
urlpatterns = [
    path("security/report/", views.security_report, name="security-report"),
]
