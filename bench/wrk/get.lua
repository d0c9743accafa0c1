-- GET with the issuer's Host header and, for userinfo, a bearer token.
-- Environment: BENCH_HOST (localhost:PORT), BENCH_AUTHORIZATION (optional).
wrk.method = "GET"
wrk.headers["Host"] = os.getenv("BENCH_HOST")
local authorization = os.getenv("BENCH_AUTHORIZATION") or ""
if authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end
