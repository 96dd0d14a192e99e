"""The simulated plant: instruments with physics, served over real Modbus TCP and OPC UA.

* ``catalog`` — the instruments, their identities, points, register map and node ids;
* ``physics`` — the deterministic process and NE 107 episodes (``Plant``);
* ``modbus`` / ``opcua`` — the servers (pymodbus, asyncua), listening on 127.0.0.1 by default;
* ``run`` — ``run_plant(...)`` (what ``fieldlink plant`` runs) and ``write_plant_config(path)``,
  which writes the matching ``[[sources]]`` into the agent's ``edge.toml``.

Nothing is imported here: ``edge.config`` reads the catalogue, and the servers must not load
with it.
"""
