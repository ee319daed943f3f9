-- The inbox shows each chat's Jira issue key: one query per page looks up the newest ticket of
-- every listed conversation (open ones are preferred; closed ones still show their key).
CREATE INDEX jira_tickets_conversation_idx ON jira_tickets (conversation_id, id DESC)
    WHERE issue_key IS NOT NULL;
