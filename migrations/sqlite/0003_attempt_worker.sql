-- Which worker made each attempt, so the history shows how work spread over workers.
ALTER TABLE processing_attempts ADD COLUMN worker TEXT;
