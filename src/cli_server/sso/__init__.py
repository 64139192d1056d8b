"""Single sign-on: GitHub OAuth and OpenID Connect providers, and the accounts they sign in."""
