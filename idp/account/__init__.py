"""Self-service (DESIGN.md §2-§4): what a signed-in user does to their own account on
/account, TOTP set-up, backup codes, passkeys, password and sessions, with the rules for
sensitive actions (reauth.py) and the recent security activity shown beside them.

No Starlette, no Authlib, no URL: every function takes plain values (the browser's
`Caller`, form values) and an `AccountServices`, returns values and raises the
`AccountRefused` family (errors.py), which idp/web turns into answers in one place.
Argon2 never runs here: actions that need it come in two halves (`begin_*` / `finish_*`)
and the web layer hashes in between, in the bounded pool, outside every unit of work."""
