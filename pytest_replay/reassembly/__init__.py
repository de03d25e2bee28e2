"""Layer 2: packets -> byte streams -> messages. tcp.py assembles each direction of a TCP connection
(reordering, retransmissions, gaps counted, never zero-filled); flows.py pairs the directions into
connections and frames HTTP/1.x messages out of them (with http/parser.py). Also the values the
readers and the assembly share: Draft (a message being assembled, draft.py) and CaptureStats
(what was read, skipped and lost, stats.py). Imports http only."""
