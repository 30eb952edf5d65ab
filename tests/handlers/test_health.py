"""Health tag."""


def test_get_data_reports_service_and_version(client):
    response = client.get("/api")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["service"] == "cortex"
    assert body["time"].endswith("Z")


def test_document_and_swagger_ui_are_served(client):
    document = client.get("/api/openapi.json")
    assert document.status_code == 200
    assert document.get_json()["info"]["title"] == "ODIN Cortex API"
    page = client.get("/api/docs/")
    assert page.status_code == 200 and b"swagger-ui" in page.data
    with client.get("/api/docs/swagger-ui-bundle.js", buffered=True) as asset:
        assert asset.status_code == 200 and len(asset.data) > 100_000
