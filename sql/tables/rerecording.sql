CREATE UNLOGGED TABLE active_series._rerecording (
    txid bigint PRIMARY KEY DEFAULT txid_current()
);
COMMENT ON TABLE active_series._rerecording IS
'The transactions re-recording history after a hard delete (_forget_series), for as long as they do: the counts they raise on the way back never exceed what they were, so the cap and alert check (_check_rises) leaves them alone. Only the extension''s own functions write it.';
