-- The claim under which a sweeper sends a notification to the webhook. Claiming sets a
-- new value; an attempt's outcome is recorded only while the claim is still the one it
-- was sent under, so a sweeper whose lease ran out never overwrites another's outcome.
ALTER TABLE notifications ADD COLUMN webhook_claim BIGINT;
