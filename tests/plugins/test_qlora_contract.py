from kbit.testing import MethodContract


class TestQloraContract(MethodContract):
    method = "qlora"


class TestQloraDoraContract(MethodContract):
    method = "qlora"
    options = {"peft_type": "dora", "r": "4"}
