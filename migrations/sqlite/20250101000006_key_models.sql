-- The models and routes a virtual key may use, as a JSON array of names; NULL: all of them.
ALTER TABLE api_keys ADD COLUMN models TEXT;
