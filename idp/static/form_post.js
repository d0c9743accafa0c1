// OAuth 2.0 Form Post Response Mode: send the response to the relying party at once.
document.querySelector("form[data-form-post]").submit();
