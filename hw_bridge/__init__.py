"""The ZeroMQ + msgpack link between a controller and a simulated or physical plant."""
