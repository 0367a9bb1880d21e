// The web terminal's page code (term helper).
