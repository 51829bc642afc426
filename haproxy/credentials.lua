-- Before a request's body (or a websocket) goes to a replica, ask a replica whether the
-- request's credentials are good: the replica answers from the credentials alone
-- (tiled/tiled_stack/front_door.py, GET /_front_door/credentials), with Tiled's own
-- checks. The body waits in HAProxy meanwhile; refused, it never reaches a replica.
-- haproxy.cfg decides when to ask, remembers good answers, and refuses when there is no
-- answer (txn.credentials_status stays unset or 0).
--
-- Only what Tiled itself would read is sent: for HTTP the Authorization header, the
-- Cookie header and ?api_key= (in a header, so that no log shows it); for a websocket
-- `Authorization: Apikey …` or ?access_token= (as a Bearer token).

local CHECK_URL = "http://127.0.0.1:8001/_front_door/credentials"
-- Tiled's API keys (hex, or the .env's URL-safe characters) and its tokens (base64url and
-- dots) fit this; a decoded value outside it (CR, LF: a header injected into the check
-- request) cannot be a credential.
local CREDENTIAL = "^[%w%._~%-]+$"

local function first(headers, name)
    local values = headers[name]
    return values and values[0]
end

-- A query parameter, decoded as Tiled decodes it; nil (and the answer 401) if it cannot
-- be a credential.
local function credential_param(txn, name)
    local value = txn.c:url_dec(txn.f:url_param(name))
    if value and value:match(CREDENTIAL) then
        return value
    end
    txn:set_var("txn.credentials_status", 401)
end

core.register_action("check_credentials", { "http-req" }, function(txn)
    local request = txn.http:req_get_headers()
    local headers = {}
    local authorization = first(request, "authorization")
    if first(request, "upgrade") and first(request, "upgrade"):lower() == "websocket" then
        if authorization and authorization:lower():sub(1, 7) == "apikey " then
            headers["authorization"] = { authorization }
        else
            if txn.f:url_param("access_token") then
                local token = credential_param(txn, "access_token")
                if not token then
                    return
                end
                headers["authorization"] = { "Bearer " .. token }
            end
        end
    else
        if authorization then
            headers["authorization"] = { authorization }
        end
        local cookie = first(request, "cookie")
        if cookie then
            headers["cookie"] = { cookie }
        end
        if txn.f:url_param("api_key") then
            local key = credential_param(txn, "api_key")
            if not key then
                return
            end
            headers["x-tiled-front-door-api-key"] = { key }
        end
    end
    local ok, response = pcall(function()
        return core.httpclient():get({ url = CHECK_URL, headers = headers, timeout = 5000 })
    end)
    if ok and response and response.status then
        txn:set_var("txn.credentials_status", response.status)
    end
end, 0)
