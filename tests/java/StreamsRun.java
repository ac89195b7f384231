// A stateful Kafka Streams application: words counted by word, through a
// repartition topic (the input is keyed by sentence id, so groupBy must
// re-key) and a changelog-backed store, with processing.guarantee
// exactly_once_v2; it runs until told to stop (a failover can happen under
// it). The test reads the counts from the output topic.
//
//   java -cp '<kafka libs>/*' StreamsRun.java <bootstrap> <application id> <input> <output> <state dir>
//
// Prints {"state": ...} on every state change; closes the application and
// exits when its standard input ends.
import java.time.Duration;
import java.util.*;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.*;
import org.apache.kafka.streams.*;
import org.apache.kafka.streams.kstream.*;

public class StreamsRun {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, args[1]);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.STATE_DIR_CONFIG, args[4]);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, "200");
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, "-1");
        p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
        StreamsBuilder b = new StreamsBuilder();
        b.stream(args[2], Consumed.with(Serdes.String(), Serdes.String()))
            .flatMapValues(v -> Arrays.asList(v.split(" ")))
            .groupBy((k, w) -> w, Grouped.with("by-word", Serdes.String(), Serdes.String()))
            .count(Materialized.as("counts"))
            .toStream()
            .to(args[3], Produced.with(Serdes.String(), Serdes.Long()));
        KafkaStreams streams = new KafkaStreams(b.build(), p);
        streams.setStateListener((now, before) -> System.out.println("{\"state\":\"" + now + "\"}"));
        // A fatal error ends the client; say so and stop.
        streams.setUncaughtExceptionHandler(e -> {
            System.out.println("{\"error\":\"" + e.getClass().getSimpleName() + "\"}");
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.REPLACE_THREAD;
        });
        streams.start();
        while (System.in.read() != -1) {
            // Input is only the signal to stop.
        }
        streams.close(Duration.ofSeconds(30));
        System.out.println("{\"closed\":true}");
    }
}
