-- Before a request's body goes to a replica, ask a replica whether the request's
-- credentials are good: the replica answers from the request's head alone
-- (tiled/tiled_stack/front_door.py, GET /_front_door/credentials), with Tiled's own
-- checks. The body waits in HAProxy meanwhile; refused, it never reaches a replica.
-- haproxy.cfg caches a good answer per credential for a short while (good_credentials).

local CHECK_URL = "http://127.0.0.1:8001/_front_door/credentials"

core.register_action("check_credentials", { "http-req" }, function(txn)
    local request = txn.http:req_get_headers()
    local headers = {}
    for _, name in ipairs({ "authorization", "cookie" }) do
        if request[name] and request[name][0] then
            headers[name] = { request[name][0] }
        end
    end
    local url = CHECK_URL
    local query_key = txn.f:url_param("api_key")
    if query_key then
        url = url .. "?api_key=" .. query_key  -- as the client sent it, still URL-encoded
    end
    local ok, response = pcall(function()
        return core.httpclient():get({ url = url, headers = headers, timeout = 5000 })
    end)
    local status = 0  -- no answer: haproxy.cfg answers 503 (fail closed)
    if ok and response and response.status then
        status = response.status
    end
    txn:set_var("txn.credentials_status", status)
end, 0)
