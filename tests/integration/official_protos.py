"""Run in a subprocess: describe TF Serving's official protos, and decode bytes the bridge wrote with them.

Reads JSON {"messages": [...], "services": [...], "predict_request": hex} on stdin and prints JSON.
This imports TensorFlow, so it must never run inside the test process (duplicate proto symbols).
"""

import json
import sys

from google.protobuf import json_format, symbol_database
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2,  # noqa: F401
                                     predict_pb2, prediction_service_pb2)


def describe_message(descriptor):
    return {field.name: [field.number, field.type, field.is_repeated, field.message_type.full_name
                         if field.message_type else field.enum_type.full_name if field.enum_type else ""]
            for field in descriptor.fields}


def main():
    request = json.load(sys.stdin)
    pool = symbol_database.Default().pool
    answer = {
        "messages": {name: describe_message(pool.FindMessageTypeByName(name)) for name in request["messages"]},
        "enums": {name: {v.name: v.number for v in pool.FindEnumTypeByName(name).values}
                  for name in request["enums"]},
        "services": {name: {m.name: [m.input_type.full_name, m.output_type.full_name]
                            for m in pool.FindServiceByName(name).methods}
                     for name in request["services"]},
    }
    parsed = predict_pb2.PredictRequest.FromString(bytes.fromhex(request["predict_request"]))
    answer["predict_request"] = json_format.MessageToDict(parsed)
    response = predict_pb2.PredictResponse()
    json_format.ParseDict(request["predict_response"], response)
    answer["predict_response"] = response.SerializeToString().hex()
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
