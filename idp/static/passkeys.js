/* Passkeys (WebAuthn) on the hosted pages: sign-in on /login (a button, and the browser's
   autofill via conditional mediation), the passkey step of the login chain
   (/login/passkey), registration on /account, and the enrolment step of an invitation's
   chain (/login/enrol_passkey).

   No build step, no dependencies, no inline script (the CSP is script-src 'self'). Loaded
   with `defer`; everything is wired from data-* attributes:

     [data-passkey-csrf]             the page's CSRF token (sent in every JSON body)
     [data-passkey="sign-in"]        /login: container of the "Use a passkey" button
     [data-passkey="step"]           /login/passkey: container of the "Use your passkey" button
     [data-passkey="register"]       /account: the "Add a passkey" form
     [data-passkey="enrol"]          /login/enrol_passkey: the same form, in the login chain
     [data-passkey-tx]               the login transaction id, when the page has one
     [data-passkey-button]           the button that starts the ceremony
     [data-passkey-error]            the role="alert" element for messages
     [data-passkey-unsupported]      shown instead when the browser has no WebAuthn

   Containers start `hidden`; the script shows them once it knows WebAuthn is there, so a
   page without JavaScript only offers what works without it. */
(function () {
  "use strict";

  var MESSAGES = {
    cancelled: "The passkey request was cancelled or timed out.",
    unsupported: "This browser cannot use passkeys.",
    duplicate: "This passkey is already registered.",
    security: "Passkeys cannot be used on this address.",
    network: "The server could not be reached. Check your connection and try again.",
    generic: "Something went wrong with the passkey. Try again."
  };

  var REFRESH_CONDITIONAL_MS = 4 * 60 * 1000;

  // ---- base64url <-> ArrayBuffer -------------------------------------------------------

  function toBuffer(value) {
    var text = String(value).replace(/-/g, "+").replace(/_/g, "/");
    while (text.length % 4) { text += "="; }
    var binary = atob(text);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    if (buffer === null || buffer === undefined) { return null; }
    var bytes = new Uint8Array(buffer instanceof ArrayBuffer ? buffer : buffer.buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // ---- options (JSON -> what navigator.credentials takes) ---------------------------------

  function descriptors(list) {
    return (list || []).map(function (d) {
      var out = { type: d.type || "public-key", id: toBuffer(d.id) };
      if (d.transports) { out.transports = d.transports; }
      return out;
    });
  }

  function requestOptions(json) {
    var PKC = window.PublicKeyCredential;
    if (PKC && typeof PKC.parseRequestOptionsFromJSON === "function") {
      try { return PKC.parseRequestOptionsFromJSON(json); } catch (e) { /* fall through */ }
    }
    var options = Object.assign({}, json, { challenge: toBuffer(json.challenge) });
    if (json.allowCredentials) { options.allowCredentials = descriptors(json.allowCredentials); }
    return options;
  }

  function creationOptions(json) {
    var PKC = window.PublicKeyCredential;
    if (PKC && typeof PKC.parseCreationOptionsFromJSON === "function") {
      try { return PKC.parseCreationOptionsFromJSON(json); } catch (e) { /* fall through */ }
    }
    var options = Object.assign({}, json, {
      challenge: toBuffer(json.challenge),
      user: Object.assign({}, json.user, { id: toBuffer(json.user.id) })
    });
    if (json.excludeCredentials) { options.excludeCredentials = descriptors(json.excludeCredentials); }
    return options;
  }

  // ---- results (PublicKeyCredential -> JSON) ----------------------------------------------

  function assertionJSON(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: {},
      response: {
        clientDataJSON: toBase64url(r.clientDataJSON),
        authenticatorData: toBase64url(r.authenticatorData),
        signature: toBase64url(r.signature),
        userHandle: r.userHandle ? toBase64url(r.userHandle) : null
      }
    };
  }

  function attestationJSON(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || null,
      clientExtensionResults: {},
      response: {
        clientDataJSON: toBase64url(r.clientDataJSON),
        attestationObject: toBase64url(r.attestationObject),
        transports: typeof r.getTransports === "function" ? r.getTransports() : []
      }
    };
  }

  // ---- talking to the server ----------------------------------------------------------------

  // `redirect`: where the server says to go instead (a same-origin path), e.g. /account's
  // registration asking for a fresh sign-in first
  function ServerError(message, redirect) {
    this.message = message;
    this.name = "ServerError";
    this.redirect = typeof redirect === "string" && /^\/(?![\/\\])/.test(redirect) ? redirect : null;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "content-type": "application/json", "accept": "application/json" },
      body: JSON.stringify(body)
    }).catch(function () {
      throw new ServerError(MESSAGES.network);
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) {
          var text = data.error_description || data.error;
          throw new ServerError(typeof text === "string" && text ? text : MESSAGES.generic, data.redirect);
        }
        return data;
      });
    });
  }

  function messageFor(error, ceremony) {
    if (error instanceof ServerError) { return error.message; }
    var name = error && error.name;
    if (name === "NotAllowedError" || name === "AbortError") { return MESSAGES.cancelled; }
    if (name === "InvalidStateError" && ceremony === "create") { return MESSAGES.duplicate; }
    if (name === "SecurityError") { return MESSAGES.security; }
    if (name === "NotSupportedError") { return MESSAGES.unsupported; }
    return MESSAGES.generic;
  }

  // ---- page helpers -------------------------------------------------------------------------

  function csrfToken(root) {
    var holder = root.closest("[data-passkey-csrf]") || document.querySelector("[data-passkey-csrf]");
    return holder ? holder.getAttribute("data-passkey-csrf") : "";
  }

  function alertOf(root) {
    return root.querySelector("[data-passkey-error]") || document.querySelector("[data-passkey-error]");
  }

  function showError(root, message) {
    var box = alertOf(root);
    if (!box) { return; }
    box.textContent = "";
    box.hidden = false;
    // a fresh text node, so the same message twice is announced twice
    window.setTimeout(function () { box.textContent = message; }, 30);
  }

  function clearError(root) {
    var box = alertOf(root);
    if (box) { box.hidden = true; box.textContent = ""; }
  }

  function busy(button, on) {
    if (!button) { return; }
    button.disabled = on;
    if (on) { button.setAttribute("aria-busy", "true"); } else { button.removeAttribute("aria-busy"); }
  }

  function supported() {
    return !!(window.PublicKeyCredential && navigator.credentials && typeof navigator.credentials.get === "function");
  }

  function showUnsupported(root) {
    var note = root.querySelector("[data-passkey-unsupported]");
    if (note) { note.hidden = false; } else { showError(root, MESSAGES.unsupported); }
  }

  // ---- sign-in (login page and passkey step) ------------------------------------------------

  function SignIn(root) {
    this.root = root;
    this.tx = root.getAttribute("data-passkey-tx") || null;
    this.button = root.querySelector("[data-passkey-button]");
    this.username = root.getAttribute("data-passkey-username-from");
    this.pending = null; // AbortController of the conditional (autofill) request
  }

  SignIn.prototype.typedUsername = function () {
    if (!this.username) { return null; }
    var field = document.querySelector(this.username);
    var value = field && field.value ? field.value.trim() : "";
    return value || null;
  };

  SignIn.prototype.options = function (username) {
    var body = { csrf_token: csrfToken(this.root) };
    if (this.tx) { body.tx = this.tx; }
    if (username) { body.username = username; }
    var self = this;
    return post("/login/passkey/options", body).then(function (data) {
      if (data.tx) { self.tx = data.tx; } // the server makes one when the page had none
      return data;
    });
  };

  SignIn.prototype.verify = function (challengeId, credential) {
    return post("/login/passkey/verify", {
      csrf_token: csrfToken(this.root),
      tx: this.tx,
      challenge_id: challengeId,
      credential: assertionJSON(credential)
    }).then(function (data) {
      if (!data.redirect) { throw new ServerError(MESSAGES.generic); }
      window.location.assign(data.redirect);
      return new Promise(function () {}); // keep the button busy while the next page loads
    });
  };

  SignIn.prototype.abortConditional = function () {
    if (this.pending) {
      var controller = this.pending;
      this.pending = null;
      try { controller.abort(); } catch (e) { /* already settled */ }
    }
  };

  /* The browser's autofill offers passkeys in the username field (autocomplete="username
     webauthn"): a request that waits until the user picks one. */
  SignIn.prototype.startConditional = function () {
    var PKC = window.PublicKeyCredential;
    if (!PKC || typeof PKC.isConditionalMediationAvailable !== "function" || typeof AbortController === "undefined") {
      return;
    }
    var self = this;
    PKC.isConditionalMediationAvailable().then(function (available) {
      if (!available || self.pending) { return; }
      var controller = new AbortController();
      self.pending = controller;
      var challengeId;
      // its challenge lives 5 minutes on the server: ask for a fresh one before then
      window.setTimeout(function () {
        if (self.pending === controller) { self.abortConditional(); self.startConditional(); }
      }, REFRESH_CONDITIONAL_MS);
      self.options(null).then(function (data) {
        if (controller.signal.aborted) { return null; }
        challengeId = data.challenge_id;
        return navigator.credentials.get({
          mediation: "conditional",
          publicKey: requestOptions(data.publicKey),
          signal: controller.signal
        });
      }).then(function (credential) {
        if (!credential || controller.signal.aborted) { return null; }
        self.pending = null;
        busy(self.button, true);
        clearError(self.root);
        return self.verify(challengeId, credential);
      }).catch(function (error) {
        if (self.pending === controller) { self.pending = null; }
        busy(self.button, false);
        // an aborted or dismissed autofill request is not an error worth showing
        if (controller.signal.aborted || (error && (error.name === "AbortError" || error.name === "NotAllowedError"))) {
          return;
        }
        showError(self.root, messageFor(error, "get"));
      });
    }).catch(function () { /* no autofill: the button still works */ });
  };

  SignIn.prototype.run = function () {
    var self = this;
    if (!supported()) { showUnsupported(this.root); return; }
    this.abortConditional();
    clearError(this.root);
    busy(this.button, true);
    var challengeId;
    this.options(this.typedUsername()).then(function (data) {
      challengeId = data.challenge_id;
      return navigator.credentials.get({ publicKey: requestOptions(data.publicKey) });
    }).then(function (credential) {
      if (!credential) { throw new Error("no credential"); }
      return self.verify(challengeId, credential);
    }).catch(function (error) {
      busy(self.button, false);
      showError(self.root, messageFor(error, "get"));
      if (self.root.hasAttribute("data-passkey-autofill")) { self.startConditional(); }
    });
  };

  function wireSignIn(root) {
    var flow = new SignIn(root);
    if (!supported()) {
      // the login page still has its password form: only the passkey step says so
      if (root.getAttribute("data-passkey") === "step") { root.hidden = false; showUnsupported(root); }
      if (flow.button) { flow.button.hidden = true; }
      return;
    }
    root.hidden = false;
    if (flow.button) {
      flow.button.addEventListener("click", function (event) {
        event.preventDefault();
        flow.run();
      });
    }
    if (root.hasAttribute("data-passkey-autofill")) { flow.startConditional(); }
    // leaving the page (the password form submitted) ends the autofill request; coming
    // back to it from the history (back button) finds the button usable again
    window.addEventListener("pagehide", function () { flow.abortConditional(); });
    window.addEventListener("pageshow", function (event) {
      if (!event.persisted) { return; }
      busy(flow.button, false);
      if (root.hasAttribute("data-passkey-autofill")) { flow.startConditional(); }
    });
  }

  // ---- registration (/account, and the login chain's enrolment) ----------------------------

  var REGISTRATION_URLS = {
    register: { options: "/account/passkeys/options", verify: "/account/passkeys" },
    enrol: { options: "/login/enrol_passkey/options", verify: "/login/enrol_passkey/verify" }
  };

  function wireRegister(form, urls) {
    if (!supported() || typeof navigator.credentials.create !== "function") {
      showUnsupported(form.parentElement || form);
      return;
    }
    form.hidden = false;
    var button = form.querySelector("[data-passkey-button]") || form.querySelector("button");
    window.addEventListener("pageshow", function (event) { if (event.persisted) { busy(button, false); } });
    var nameField = form.querySelector("[name=passkey_name]");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (button && button.disabled) { return; }
      clearError(form);
      busy(button, true);
      var csrf = csrfToken(form);
      var tx = form.getAttribute("data-passkey-tx");
      var challengeId;
      // the enrolment's calls name their login transaction; /account's have none
      function body(fields) { return tx ? Object.assign({ tx: tx }, fields) : fields; }
      post(urls.options, body({ csrf_token: csrf })).then(function (data) {
        challengeId = data.challenge_id;
        return navigator.credentials.create({ publicKey: creationOptions(data.publicKey) });
      }).then(function (credential) {
        if (!credential) { throw new Error("no credential"); }
        return post(urls.verify, body({
          csrf_token: csrf,
          challenge_id: challengeId,
          name: nameField ? nameField.value.trim() : "",
          credential: attestationJSON(credential)
        }));
      }).then(function (data) {
        window.location.assign(data.redirect || "/account");
        return new Promise(function () {}); // busy until the page reloads
      }).catch(function (error) {
        if (error instanceof ServerError && error.redirect) {
          window.location.assign(error.redirect); // sign in again, then add the passkey
          return;
        }
        busy(button, false);
        showError(form, messageFor(error, "create"));
      });
    });
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    var roots = document.querySelectorAll("[data-passkey]");
    for (var i = 0; i < roots.length; i++) {
      var kind = roots[i].getAttribute("data-passkey");
      if (kind === "sign-in" || kind === "step") { wireSignIn(roots[i]); }
      else if (Object.prototype.hasOwnProperty.call(REGISTRATION_URLS, kind)) {
        wireRegister(roots[i], REGISTRATION_URLS[kind]);
      }
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
