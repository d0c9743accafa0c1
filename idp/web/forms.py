"""Reading a hosted page's form: parameters read once, then the CSRF check, before any
handler logic runs. A refusal is a page, never a redirect."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from idp.web.pages import check_form_csrf, error_page
from idp.web.params import BadParameters, read_params

FORM_EXPIRED = "The form expired. Go back and try again."


async def read_form(request: Request) -> dict[str, str] | Response:
    try:
        params = await read_params(request, max_bytes=request.app.state.services.settings.max_body_bytes)
    except BadParameters as exc:
        return error_page(request, 400, str(exc))
    if not check_form_csrf(request, params):
        return error_page(request, 403, FORM_EXPIRED)
    return params
