"""The round's shared steps over the exchange (run by the coordinator and by the decrypting silo): read a
signed update and check it, gather the mask keys and reveals, load the global model."""
