DROP TABLE IF EXISTS oauth_refresh_token;
DROP TABLE IF EXISTS oauth_family;
