-- POST of a form body with HTTP Basic client authentication (token, introspection).
-- Environment: BENCH_HOST (localhost:PORT), BENCH_AUTHORIZATION ("Basic …"), BENCH_BODY.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Host"] = os.getenv("BENCH_HOST")
wrk.headers["Authorization"] = os.getenv("BENCH_AUTHORIZATION")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
