// A single-page app signing in through idp with oidc-client-ts: authorization code + PKCE
// (a public client, no secret), profile from userinfo, refresh with the refresh token,
// RP-initiated logout. The page shows what the library holds so the test can check it.
// /config.json (authority, client_id) is written by the test server.
"use strict";

const status = document.getElementById("status");

function show(state, detail) {
  status.dataset.state = state;
  status.textContent = detail ? `${state}: ${detail}` : state;
}

function showUser(user) {
  document.getElementById("user").textContent = user ? JSON.stringify({
    profile: user.profile,
    id_token: user.id_token,
    access_token: user.access_token,
    refresh_token: user.refresh_token,
    scope: user.scope,
    expires_at: user.expires_at,
  }, null, 2) : "";
}

function failed(error) {
  document.getElementById("error").textContent = `${error && error.name}: ${error && error.message}`;
  show("error");
}

function randomValue() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/[+/=]/g, "");
}

async function main() {
  const config = await (await fetch("/config.json")).json();
  const origin = window.location.origin;
  const manager = new oidc.UserManager({
    authority: config.authority,
    client_id: config.client_id,
    redirect_uri: `${origin}/callback`,
    post_logout_redirect_uri: `${origin}/logged-out`,
    response_type: "code",
    scope: "openid profile email offline_access",
    loadUserInfo: true,
    automaticSilentRenew: false,
    userStore: new oidc.WebStorageStateStore({ store: window.sessionStorage }),
  });

  document.getElementById("sign-in").addEventListener("click", () => {
    show("busy");
    // oidc-client-ts sends a nonce only when given one, and then checks the ID token's.
    manager.signinRedirect({ nonce: randomValue() }).catch(failed);
  });
  document.getElementById("userinfo").addEventListener("click", async () => {
    show("busy");
    try {
      const user = await manager.getUser();
      const endpoint = await manager.metadataService.getUserInfoEndpoint();
      const response = await fetch(endpoint, { headers: { Authorization: `Bearer ${user.access_token}` } });
      if (!response.ok) throw new Error(`userinfo answered ${response.status}`);
      document.getElementById("userinfo-response").textContent = JSON.stringify(await response.json(), null, 2);
      show("userinfo");
    } catch (error) { failed(error); }
  });
  document.getElementById("refresh").addEventListener("click", async () => {
    show("busy");
    try {
      showUser(await manager.signinSilent());  // with a refresh token: the refresh_token grant
      show("refreshed");
    } catch (error) { failed(error); }
  });
  document.getElementById("sign-out").addEventListener("click", () => {
    show("busy");
    manager.signoutRedirect().catch(failed);
  });

  const path = window.location.pathname;
  if (path === "/callback") {
    const user = await manager.signinRedirectCallback();
    window.history.replaceState({}, "", "/");
    showUser(user);
    show("signed-in");
  } else if (path === "/logged-out") {
    await manager.removeUser();
    show("signed-out");
  } else {
    const user = await manager.getUser();
    showUser(user);
    show(user ? "signed-in" : "anonymous");
  }
}

main().catch(failed);
