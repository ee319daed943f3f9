-- Groups: who is in them (jid, lid, phone, admin), as WhatsApp last told us.
ALTER TABLE conversations ADD COLUMN participants jsonb;
