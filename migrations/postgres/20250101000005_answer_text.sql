-- The answer text of a non-stream request, kept only with `[database] store_prompts = true`,
-- so that `switchyard judge` can label logged answers after the fact.
ALTER TABLE request_log ADD COLUMN answer_text TEXT;
