// Sign-in with the hospital's identity provider (sso helper).
