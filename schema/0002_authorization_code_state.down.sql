DROP TABLE IF EXISTS oauth_state;
DROP TABLE IF EXISTS oauth_authorization_code;
