"""The example's views (JSON, to keep it short): nothing here knows about sessionary except
"log out my other sessions" and the list of the user's sessions."""

from django.contrib.auth import authenticate, login, logout
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from sessionary.contrib.django import sessions_of


@require_GET
def counter(request: HttpRequest) -> JsonResponse:
    """Count this session's visits: an ordinary `request.session` write."""
    request.session["count"] = request.session.get("count", 0) + 1
    user = request.user.get_username() if request.user.is_authenticated else None
    return JsonResponse({"count": request.session["count"], "user": user})


@require_POST
def log_in(request: HttpRequest) -> JsonResponse:
    """Django's own login: it gives the session a new id, and sessionary records the user as
    its subject."""
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({"error": "wrong username or password"}, status=401)
    login(request, user)
    return JsonResponse({"user": user.get_username()})


@require_POST
def log_out(request: HttpRequest) -> JsonResponse:
    logout(request)  # deletes the session in the store
    return JsonResponse({"user": None})


@login_required
@require_GET
def my_sessions(request: HttpRequest) -> JsonResponse:
    """The user's live sessions (no ids: they are credentials), this one marked."""
    current = request.session.session_key
    return JsonResponse(
        {
            "sessions": [
                {"created": s.created.isoformat(), "current": s.id == current}
                for s in sessions_of(request.user.pk)
            ]
        }
    )


@login_required
@require_POST
def log_out_others(request: HttpRequest) -> JsonResponse:
    """Log out my other sessions: every session of this user but this one."""
    return JsonResponse({"logged_out": request.session.revoke_others()})
