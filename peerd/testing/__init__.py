"""Test and simulation helpers, kept off the daemon's import path.

- ``peerd.testing.broker`` — ``Broker``: mosquitto or the embedded amqtt broker
  (the ``[sim]`` extra) on a free loopback port; ``python -m peerd.testing.broker``.
- ``peerd.testing.memory`` — ``MemoryBus``/``MemoryTransport``: an in-memory MQTT
  bus for unit tests of the gossip logic without a broker.

Nothing under ``peerd.node``, ``peerd.daemon`` or ``peerd.cli`` imports this
package at module level (``tests/test_packaging.py`` checks it), so an edge
install without the ``[sim]`` extra never needs amqtt.
"""
