"""Images: where the bridge may connect (address_policy), connections pinned to checked addresses under a
wall-clock deadline (http_transport), the fetcher (fetch), and decoding for the model's input (preprocess)."""
