"""`tfs-bridge redrive`: send dead letters' original records back to the input topic, exactly once.

    letters    a dead letter read back from Kafka (untrusted bytes): its error and the original it keeps
    selection  which dead letters are sent (stage, type, time, redrive limit) and the tally of what became of each
    options    the command's flags
    topics     the dead-letter topic's ends as of the start, from Kafka's admin API
    runner     the consume-produce loop: records and offsets in one transaction

What is sent back, and how faithfully (the dead letter's format: bridge.records):
    value    the original bytes, from the dead letter's "value" (text, or base64). A value over 64 KiB was cut
             ("truncated"): it cannot be restored, so such a dead letter is skipped and counted as unreadable
    key      the dead letter's own Kafka key: the bridge writes each dead letter with its original's key
    headers  the original headers from the dead letter's "headers", as the bridge kept them: redacted like every
             URL the bridge shows (bridge.redact). A header named like a credential (authorization, cookie, token,
             secret, password, api key, session, signature...) was left out, and a text value lost the user info
             and query string of any URL in it; the redriven record carries the redacted headers, so it is not
             byte-identical to the original there ("headers_redacted" names them). The bridge itself reads no
             header; what relies on one (e.g. a signed-URL token in a header) must be re-sent by its producer
             instead. Headers that could not be kept ("headers_lost": a name not UTF-8, or over 64 KiB) make the
             dead letter unreadable, as their redrive count is unknown too. A dead letter written before the bridge
             kept headers has no "headers": its original is sent without headers
    count    the header tfs-bridge.redrive.count, set to one more than the original's. The bridge keeps every
             header in the dead letters it writes, so a record that fails again carries its count into its new dead
             letter; one redriven --max-redrives times already is skipped and counted, and never circles for ever
    partition  the original's input partition (the dead letter's "source") when the input topic still has it, else
             the default partitioner
Its consumer group (<--group-id>-redrive by default) remembers how far it read: dead letters skipped by a filter, by
the limit or as unreadable are behind its offsets too, so a later redrive in the same group does not see them
again. Another --redrive-group-id starts from the beginning (and may send again what the first group sent).
A bare-URL record's output id is its coordinates (topic-partition-offset): redriven, it gets its new ones. JSON
records with an "id" keep it.
"""
