"""An LCEL chain on ChatRStitch: prompt template -> stitched chat model -> string output parser.

    python examples/langchain_chain.py [--max-tokens N]

Prints each answer, then what the stitching did over the whole run (RStitchCallbackHandler).
"""

from __future__ import annotations

import argparse

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from rstitch_integrations.callbacks import RStitchCallbackHandler
from rstitch_integrations.langchain import ChatRStitch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32, help="most tokens per answer")
    args = parser.parse_args()

    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a concise geography assistant. Answer in one sentence."),
         ("human", "What is the capital of {country}?")]
    )
    chain = prompt | ChatRStitch(max_tokens=args.max_tokens) | StrOutputParser()
    stats = RStitchCallbackHandler()
    for country in ("France", "Japan"):
        answer = chain.invoke({"country": country}, config={"callbacks": [stats]})
        print(f"{country}: {answer}")
    print()
    print(stats)


if __name__ == "__main__":
    main()
