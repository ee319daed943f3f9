-- The whatsmeow device store (neonize's Go side) keeps its own tables in their own schema of
-- the same database; workers connect with search_path=whatsmeow.
CREATE SCHEMA IF NOT EXISTS whatsmeow;
