"""The application's own login page, for everyone with a permission in Trafficinator.

The admin's login admits staff only; a user given, say, "Can view run" and "Can run
traffic" is not staff and had no way in. This page admits any active user who holds at
least one permission (super users hold them all), and refuses the rest with a reason."""

from __future__ import annotations

from django import forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User


class LoginForm(AuthenticationForm):
    def confirm_login_allowed(self, user: User) -> None:
        super().confirm_login_allowed(user)
        if not user.is_superuser and not user.get_all_permissions():
            raise forms.ValidationError(
                "This account has no permission in Trafficinator yet. Ask an administrator to give it one "
                "(Configuration → Users).",
                code="no_permission",
            )


login = auth_views.LoginView.as_view(
    template_name="registration/login.html", authentication_form=LoginForm, redirect_authenticated_user=True
)
logout = auth_views.LogoutView.as_view()
