"""Controllers under test: the contract (api), the host that runs one behind real OCPP and Modbus, and the reference controllers."""
